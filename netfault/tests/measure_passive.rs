//! Passive `netfault measure` (no `--probe`): TCP round trips taken in the data path by the
//! `netfault-rtt` programs. On a veth pair: the round trips agree with `measure --probe` and
//! with the kernel's own view of the connection (TCP_INFO); every handshake is one sample,
//! exactly; nothing stays attached after the command ends, is told to stop, or is killed; and
//! through BPF_PROG_TEST_RUN, one crafted TSval/TSecr pair (or SYN/SYN-ACK) gives exactly one
//! sample in the right bucket.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]
mod common;

use std::{
    net::{IpAddr, TcpStream},
    os::fd::AsRawFd as _,
    thread,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType, TestRun, TestRunOptions};
use common::{
    passive::{Measuring, connect, entry, p50, ping_pong},
    testrun, *,
};
use netfault_common::{RTT_SRC_HANDSHAKE, RTT_SRC_TCP_TS, rtt_bucket, rtt_names};
use netfault_lab::lab::run_in;

/// The names of the tcx programs on `iface` in `ns`, both directions.
fn tcx_programs(ns: &str, iface: &str) -> Vec<String> {
    let iface = iface.to_owned();
    run_in(ns, move || {
        let idx = netfault::dataplane::ifindex(&iface).expect("the interface");
        let mut names = Vec::new();
        for ty in [TcAttachType::Ingress, TcAttachType::Egress] {
            if let Ok((_, progs)) = SchedClassifier::query_tcx(idx, ty) {
                names.extend(
                    progs
                        .iter()
                        .filter_map(|p| p.name_as_str().map(String::from)),
                );
            }
        }
        names
    })
    .expect("query tcx")
}

fn rtt_attached(h: &Host) -> bool {
    let names = tcx_programs(&h.ns, &h.iface);
    names.iter().any(|n| n == rtt_names::EGRESS) || names.iter().any(|n| n == rtt_names::INGRESS)
}

/// Waits (bounded) until both passive programs are on `h`'s interface.
fn wait_attached(h: &Host) {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let names = tcx_programs(&h.ns, &h.iface);
        if [rtt_names::EGRESS, rtt_names::INGRESS]
            .iter()
            .all(|p| names.iter().any(|n| n == p))
        {
            return;
        }
        assert!(
            Instant::now() < end,
            "measure did not attach within 20 s: {names:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The kernel's smoothed round trip of a connected socket (TCP_INFO's tcpi_rtt), in µs.
fn kernel_srtt_us(s: &TcpStream) -> f64 {
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes of it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    f64::from(info.tcpi_rtt)
}

/// Passive and active measurement and the kernel agree on a veth's round trip, within a
/// stated tolerance. A veth round trip is tens of µs, and what each way measures differs:
/// TCP's includes the echo server's turnaround (a thread wakeup, on a loaded machine up to a
/// few hundred µs), which ICMP's does not; the kernel's is smoothed. Tolerance: passive p50
/// within 0.3 ms + 50 % of the kernel's srtt, and within 0.5 ms + 50 % of the probes' p50. A
/// matching error shows as whole milliseconds (TCP timestamps tick every 1 ms): far outside.
#[test]
fn passive_agrees_with_probes_and_the_kernel() {
    let (_lab, nf, [a, b]) = pair();
    let echo = TcpEcho::with_idle(&b.ns, b.sock(false, 5001), Duration::from_secs(10)).unwrap();
    let peer = b.v4.to_string();
    let job = Measuring::start(
        &nf,
        &a.ns,
        &["--iface", &a.iface, "--peer", &peer, "--duration", "3s"],
    );
    let (s, n) = ping_pong(&a, echo.addr, Duration::from_millis(2000));
    let srtt = kernel_srtt_us(&s);
    let peers = job.finish();
    drop(s);
    let ts = entry(&peers, b.v4.into(), "tcp-ts");
    let samples = ts["samples"].as_u64().unwrap();
    // Each request's TSval is echoed by its response: about one sample per exchange (some
    // requests share a millisecond tick with the previous ACK; none is counted twice).
    assert!(
        samples >= u64::from(n) / 2 && samples <= u64::from(n) + 10,
        "{samples} samples for {n} exchanges: {ts}"
    );
    assert!(ts["loss"].is_null(), "{ts}");
    let passive = p50(ts);
    assert!(
        passive > 0.0 && (passive - srtt).abs() <= 300.0 + 0.5 * srtt,
        "passive p50 {passive} µs, kernel srtt {srtt} µs"
    );
    let probed = run(
        &nf,
        &a,
        &[
            "measure",
            "--peer",
            &peer,
            "--probe",
            "--interval",
            "10ms",
            "--duration",
            "1s",
            "--json",
        ],
    );
    let probed: serde_json::Value = serde_json::from_str(&probed).unwrap();
    let active = p50(&probed["peers"][0]);
    eprintln!(
        "{samples} samples for {n} exchanges: passive p50 {passive} µs, kernel srtt {srtt} µs, \
         probes' p50 {active} µs"
    );
    assert!(
        (passive - active).abs() <= 500.0 + 0.5 * active,
        "passive p50 {passive} µs, probes' p50 {active} µs"
    );
    assert!(!rtt_attached(&a), "the passive programs stayed attached");
}

/// N connections -> N handshake samples, exactly (both families), with netfault's own programs
/// on the same interface, which stay as they were.
#[test]
fn every_handshake_is_one_sample() {
    let (mut lab, nf, [a, b]) = pair();
    attach(&mut lab, &nf, &a);
    let before = tcx_programs(&a.ns, &a.iface);
    assert!(before.iter().any(|n| n == "nf_tc_egress"), "{before:?}");
    let e4 = TcpEcho::start(&b.ns, b.sock(false, 5002)).unwrap();
    let e6 = TcpEcho::start(&b.ns, b.sock(true, 5002)).unwrap();
    let peers = format!("{},{}", b.v4, b.v6);
    let job = Measuring::start(
        &nf,
        &a.ns,
        &["--iface", &a.iface, "--peer", &peers, "--duration", "3s"],
    );
    const N: u64 = 12;
    for _ in 0..N {
        for to in [e4.addr, e6.addr] {
            drop(connect(&a, to));
        }
    }
    let got = job.finish();
    for peer in [IpAddr::from(b.v4), IpAddr::from(b.v6)] {
        let h = entry(&got, peer, "handshake");
        assert_eq!(h["samples"], N, "{h}");
        assert!(h["loss"].is_null(), "{h}");
    }
    assert!(!rtt_attached(&a), "the passive programs stayed attached");
    assert_eq!(
        tcx_programs(&a.ns, &a.iface),
        before,
        "netfault's programs changed"
    );
}

/// Nothing stays attached when `measure` is told to stop (SIGTERM: it reports and exits 0) or
/// killed (SIGKILL: the links go with its fds).
#[test]
fn nothing_is_left_after_sigterm_or_kill() {
    let (_lab, nf, [a, _b]) = pair();
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        let mut child = nf
            .spawn(
                &a.ns,
                &["measure", "--iface", &a.iface, "--duration", "60s"],
            )
            .unwrap();
        wait_attached(&a);
        // SAFETY: a child of ours, not yet waited for.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let end = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < end,
                "measure did not end on signal {signal}"
            );
            thread::sleep(Duration::from_millis(10));
        };
        if signal == libc::SIGTERM {
            assert!(status.success(), "SIGTERM: {status}");
        }
        assert!(
            !rtt_attached(&a),
            "signal {signal}: programs left: {:?}",
            tcx_programs(&a.ns, &a.iface)
        );
    }
}

/// A TCP segment (`flags`, seq, ack) with `opts` as its options (padded to 4 bytes).
fn tcp(flags: u8, seq: u32, ack: u32, opts: &[u8]) -> Vec<u8> {
    let mut o = opts.to_vec();
    while !o.len().is_multiple_of(4) {
        o.push(0);
    }
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&40000u16.to_be_bytes());
    h[2..4].copy_from_slice(&5201u16.to_be_bytes());
    h[4..8].copy_from_slice(&seq.to_be_bytes());
    h[8..12].copy_from_slice(&ack.to_be_bytes());
    h[12] = (((20 + o.len()) / 4) << 4) as u8;
    h[13] = flags;
    h[14..16].copy_from_slice(&65535u16.to_be_bytes());
    h.extend_from_slice(&o);
    h
}

/// The timestamp option after an MSS and a SACK-permitted option (not the NOP-aligned layout
/// Linux sends), so the option walk is exercised.
fn ts_opts(tsval: u32, tsecr: u32) -> Vec<u8> {
    let mut o = vec![2, 4, 0x05, 0xb4, 4, 2, 8, 10];
    o.extend_from_slice(&tsval.to_be_bytes());
    o.extend_from_slice(&tsecr.to_be_bytes());
    o
}

fn swap(src: IpAddr, dst: IpAddr, seg: &[u8]) -> Vec<u8> {
    let mut s = seg.to_vec();
    s.swap(0, 2);
    s.swap(1, 3);
    testrun::frame(dst, src, 6, &s)
}

fn run_once(ebpf: &aya::Ebpf, prog: &str, frame: &[u8]) {
    let p: &SchedClassifier = ebpf.program(prog).unwrap().try_into().unwrap();
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ..Default::default()
        })
        .expect("test run");
    // TC_ACT_UNSPEC: always passed on, never changed.
    assert_eq!(r.return_value as i32, -1, "{prog}");
}

/// Through BPF_PROG_TEST_RUN: a TSval leaving and its echo coming back some milliseconds later
/// is exactly one sample, in the bucket of the time between them (bounded by the wall clock on
/// either side); the echo seen again, or the TSval sent again, adds none; a SYN and its
/// SYN-ACK are one handshake sample, and a SYN-ACK acking anything else none. Both families.
#[test]
fn a_crafted_echo_is_one_sample_in_its_bucket() {
    let ebpf = netfault::dataplane::rtt_load().expect("load the passive object");
    for (i, (local, remote)) in [testrun::v4(), testrun::v6()].into_iter().enumerate() {
        let tsval = 1000 + i as u32;
        let out = testrun::frame(local, remote, 6, &tcp(0x18, 1, 1, &ts_opts(tsval, 5)));
        let back = swap(local, remote, &tcp(0x18, 1, 1, &ts_opts(77, tsval)));
        let t0 = Instant::now();
        run_once(&ebpf, rtt_names::EGRESS, &out);
        let t1 = Instant::now();
        thread::sleep(Duration::from_millis(3));
        // The same TSval again (a second segment in the same tick): not stamped anew.
        run_once(&ebpf, rtt_names::EGRESS, &out);
        let t2 = Instant::now();
        run_once(&ebpf, rtt_names::INGRESS, &back);
        let t3 = Instant::now();
        run_once(&ebpf, rtt_names::INGRESS, &back);
        let (lo, hi) = ((t2 - t1).as_micros() as u64, (t3 - t0).as_micros() as u64);

        // SYN out (ISN 500), a SYN-ACK acking 700 (no sample), then one acking 501.
        let syn = testrun::frame(local, remote, 6, &tcp(0x02, 500, 0, &[]));
        run_once(&ebpf, rtt_names::EGRESS, &syn);
        run_once(
            &ebpf,
            rtt_names::INGRESS,
            &swap(local, remote, &tcp(0x12, 9, 700, &[])),
        );
        run_once(
            &ebpf,
            rtt_names::INGRESS,
            &swap(local, remote, &tcp(0x12, 9, 501, &[])),
        );

        let got: Vec<_> = netfault::dataplane::rtt_samples(&ebpf)
            .unwrap()
            .into_iter()
            .filter(|(k, _)| netfault::measure::passive::peer_addr(k) == remote)
            .collect();
        let ts: Vec<_> = got
            .iter()
            .filter(|(k, _)| k.source == RTT_SRC_TCP_TS)
            .collect();
        assert_eq!(ts.len(), 1, "{remote}: {got:?}");
        assert_eq!(ts[0].1, 1, "{remote}: {got:?}");
        let b = ts[0].0.bucket;
        assert!(
            rtt_bucket(lo) <= b && b <= rtt_bucket(hi),
            "{remote}: bucket {b}, wall clock between {lo} and {hi} µs"
        );
        let hs: u64 = got
            .iter()
            .filter(|(k, _)| k.source == RTT_SRC_HANDSHAKE)
            .map(|(_, n)| n)
            .sum();
        assert_eq!(hs, 1, "{remote}: {got:?}");
    }
}
