//! TCP through a netfault rule: a bulk flow from one of the lab's hosts to another, run until
//! the rule has matched enough wire packets, with what the sender's stack and the receiving
//! device saw meanwhile. `tests/loss.rs` and `netfault-bench retrans` are built on it.
//!
//! Same rails as [`crate::lab`]: documentation addresses only, every loop bounded in count and
//! time.
use std::{
    fmt, fs, io,
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};

use crate::lab::{
    Counters, Host, Netfault, Z_ALPHA_1E4, is_documentation, run_in, wilson_interval,
};

/// The port the flow goes to; the rule matches it.
pub const PORT: u16 = 5201;

/// One counter of `/proc/net/snmp` (`Tcp: ... RetransSegs ...`) or `/proc/net/netstat`
/// (`TcpExt: ...`) in namespace `ns`. Read through `/proc/thread-self`, which is the reading
/// thread's namespace (`/proc/self/net` is the process's).
pub fn snmp(ns: &str, group: &str, name: &str) -> Result<u64> {
    let file = if group == "TcpExt" { "netstat" } else { "snmp" };
    let text = run_in(ns, || {
        fs::read_to_string(format!("/proc/thread-self/net/{file}"))
    })?
    .with_context(|| format!("read /proc/net/{file} in {ns}"))?;
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (lines.next(), lines.next());
    let (Some(names), Some(values)) = (names, values) else {
        anyhow::bail!("no {group} lines in /proc/net/{file}");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .with_context(|| format!("no {group} {name} in /proc/net/{file}"))
}

/// A device's packet counters in namespace `ns`.
pub fn link_stats(ns: &str, iface: &str) -> Result<netfault::netlink::LinkStats> {
    run_in(ns, || -> Result<_> {
        let idx = netfault::netlink::link_index(iface)?.context("no such device")?;
        Ok(netfault::netlink::link_stats(idx)?)
    })?
    .with_context(|| format!("read the counters of {iface} in {ns}"))
}

/// What a device looks like to the data path: its offload features, its GSO segment limit,
/// and the egress IFB device that segments for it (`control::segment`; its features, None
/// when there is none), compared whole before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSettings {
    pub features: netfault::netlink::Features,
    pub gso_max_segs: u32,
    pub segmenter: Option<netfault::netlink::Features>,
}

pub fn device_settings(ns: &str, iface: &str) -> Result<DeviceSettings> {
    run_in(ns, || -> Result<_> {
        let idx = netfault::netlink::link_index(iface)?.context("no such device")?;
        let ifb = netfault::control::segment::ifb_name(idx);
        let segmenter = match netfault::netlink::link_index(&ifb)? {
            Some(_) => Some(netfault::netlink::features(&ifb)?),
            None => None,
        };
        Ok(DeviceSettings {
            features: netfault::netlink::features(iface)?,
            gso_max_segs: netfault::netlink::link_gso_max_segs(idx)?,
            segmenter,
        })
    })?
    .with_context(|| format!("read the settings of {iface} in {ns}"))
}

/// One run's figures.
#[derive(Debug, Clone, Default)]
pub struct LossRun {
    pub counters: Counters,
    /// New segments the sender's stack sent (TcpOutSegs, which leaves out retransmissions).
    pub out_segs: u64,
    /// Segments it sent again (RetransSegs).
    pub retrans: u64,
    /// Packets the receiving device counted (rx_packets).
    pub rx_packets: u64,
    /// Packets the devices dropped between the two stacks, before any hook of the receiver's
    /// could see them: the sender's tx_dropped and the receiver's rx_dropped (a veth whose peer
    /// runs XDP drops a frame when the peer's ring is full).
    pub device_dropped: u64,
    /// Payload bits per second at the sink over the whole flow.
    pub goodput_bits: f64,
    pub secs: f64,
    /// What the sender's stack made of it (TcpExt counters of its namespace): DSACKs received
    /// (the receiver got a segment twice: a retransmission was spurious), retransmission
    /// timeouts, and retransmissions it held back because the segment was still queued in the
    /// host.
    pub dsacks: u64,
    pub timeouts: u64,
    pub host_queued: u64,
}

impl LossRun {
    /// Segments the sender's stack put on the wire: new ones and retransmissions.
    pub fn sent(&self) -> u64 {
        self.out_segs + self.retrans
    }

    /// Dropped (or duplicated) over matched, as a fraction.
    pub fn ratio(&self, k: u64) -> f64 {
        k as f64 / self.counters.matched.max(1) as f64
    }

    /// `p` lies in the Wilson interval (alpha 1e-4) of `k` out of the matched packets.
    pub fn wilson_holds(&self, k: u64, p: f64) -> (bool, (f64, f64)) {
        let (lo, hi) = wilson_interval(k, self.counters.matched, Z_ALPHA_1E4);
        (lo <= p && p <= hi, (lo, hi))
    }

    /// Retransmissions per dropped packet.
    pub fn retrans_per_drop(&self) -> f64 {
        self.retrans as f64 / self.counters.dropped.max(1) as f64
    }

    /// DSACKs the sender received per dropped packet.
    pub fn dsacks_per_drop(&self) -> f64 {
        self.dsacks as f64 / self.counters.dropped.max(1) as f64
    }

    /// The sums of `runs` (the same flow repeated): counters and segments added, goodput
    /// weighted by time.
    pub fn sum(runs: &[LossRun]) -> LossRun {
        let mut t = LossRun::default();
        let mut bits = 0.0;
        for r in runs {
            let c = &mut t.counters;
            c.matched += r.counters.matched;
            c.dropped += r.counters.dropped;
            c.duplicated += r.counters.duplicated;
            c.passed += r.counters.passed;
            t.out_segs += r.out_segs;
            t.retrans += r.retrans;
            t.rx_packets += r.rx_packets;
            t.device_dropped += r.device_dropped;
            t.dsacks += r.dsacks;
            t.timeouts += r.timeouts;
            t.host_queued += r.host_queued;
            t.secs += r.secs;
            bits += r.goodput_bits * r.secs;
        }
        t.goodput_bits = bits / t.secs.max(1e-9);
        t
    }
}

impl fmt::Display for LossRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counters;
        write!(
            f,
            "matched {} dropped {} duplicated {} passed {} | sender sent {} (retrans {}, {:.2}/drop; DSACKs {}, RTOs {}, held in host {}) | receiver rx {} (devices dropped {}) | {:.1} Mbit/s over {:.1} s",
            c.matched,
            c.dropped,
            c.duplicated,
            c.passed,
            self.sent(),
            self.retrans,
            self.retrans_per_drop(),
            self.dsacks,
            self.timeouts,
            self.host_queued,
            self.rx_packets,
            self.device_dropped,
            self.goodput_bits / 1e6,
            self.secs
        )
    }
}

/// Where the rule sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// On the sender, `--dir egress`.
    SenderEgress,
    /// On the receiver, `--dir ingress`.
    ReceiverIngress,
}

impl Side {
    pub fn label(self) -> &'static str {
        match self {
            Side::SenderEgress => "sender's egress",
            Side::ReceiverIngress => "receiver's ingress",
        }
    }
}

/// How long a flow lasts: until the rule has matched `packets`, at most `limit`.
#[derive(Debug, Clone, Copy)]
pub struct Until {
    pub packets: u64,
    pub limit: Duration,
}

/// Adds rule `name` (`action`: `["--drop", "10%"]`...) matching the flow on `side`, where
/// netfault is attached already, then sends TCP from `tx` to `rx` until the rule has matched
/// `until.packets` or `until.limit` has passed, and reads the counters once the flow has ended.
pub fn run(
    nf: &Netfault,
    tx: &Host,
    rx: &Host,
    side: Side,
    name: &str,
    action: &[&str],
    until: Until,
) -> Result<LossRun> {
    run_with(nf, tx, rx, side, name, action, until, Opts::default())
}

/// How the sender's socket is set up.
#[derive(Debug, Clone, Copy, Default)]
pub struct Opts<'a> {
    /// Its congestion control (TCP_CONGESTION; None: the namespace's default).
    pub cc: Option<&'a str>,
    /// Its send buffer (SO_SNDBUF, bytes; None: autotuned). A flow that ends by time drains
    /// what it has buffered through the lossy path: a small buffer keeps that short.
    pub sndbuf: Option<u32>,
    /// Its pacing cap (SO_MAX_PACING_RATE, bytes a second; None: uncapped). TCP paces itself
    /// under it (no fq needed). A flow capped below what the machine's CPUs can carry
    /// compares the wire, not the CPU time of the path a placement takes.
    pub pacing: Option<u64>,
}

/// [`run`] with the sender's socket set up as `opts` says.
#[expect(
    clippy::too_many_arguments,
    reason = "run's arguments and the socket's"
)]
pub fn run_with(
    nf: &Netfault,
    tx: &Host,
    rx: &Host,
    side: Side,
    name: &str,
    action: &[&str],
    until: Until,
    opts: Opts<'_>,
) -> Result<LossRun> {
    let Until {
        packets: min_packets,
        limit,
    } = until;
    let dst = rx.sock(false, PORT);
    ensure!(
        is_documentation(dst.ip()),
        "{dst} is not a documentation address"
    );
    let (host, dir) = match side {
        Side::SenderEgress => (tx, "egress"),
        Side::ReceiverIngress => (rx, "ingress"),
    };
    let port = PORT.to_string();
    let mut args = vec![
        "rule", "add", name, "--dir", dir, "--proto", "tcp", "--dport", &port, "--dst",
    ];
    let dst_ip = rx.v4.to_string();
    args.push(&dst_ip);
    args.extend_from_slice(action);
    nf.run(&host.ns, &args)?;

    let poll_ns = host.ns.clone();
    flow_with(
        tx,
        rx,
        limit,
        opts,
        || Ok(nf.counters(&poll_ns, name)?.matched >= min_packets),
        || nf.counters(&host.ns, name),
    )
}

/// The send buffer of [`placements`]' flows: at 10 % loss a flow may crawl (timeouts), and
/// what is buffered when its time is up is drained before it ends.
pub const SNDBUF: u32 = 256 << 10;

/// The pacing cap of [`placements`]' flows: 200 Mbit/s. Uncapped, BBR at 10 % loss ran at what
/// the CPUs allowed (0.9 to 1.5 Gbit/s on the 2-CPU CI VM), and the egress placement, which
/// segments in an IFB device, costs more CPU a packet: the goodput then compared CPU time,
/// not the wire, and varied 1.6x with the machine's load.
pub const PLACEMENT_PACING: u64 = 200_000_000 / 8;

/// One congestion control's flows through a 10 % (`action`) loss rule at each placement, in
/// one lab whose two hosts both have netfault attached (so the devices are the same for both
/// placements and only where the rule sits differs): `reps` pairs, the placements alternating,
/// each flow `secs` long, the rule deleted after each. Returns (sender's egress, receiver's
/// ingress), summed over the repetitions.
pub fn placements(
    nf: &Netfault,
    tx: &Host,
    rx: &Host,
    action: &[&str],
    cc: &str,
    reps: u32,
    secs: Duration,
) -> Result<(LossRun, LossRun)> {
    let (mut egress, mut ingress) = (Vec::new(), Vec::new());
    // The receiving veth in the same mode for both placements: a rule at its ingress links
    // netfault's XDP program, and a veth with an XDP program delivers through its NAPI ring
    // (in order, one CPU at a time) instead of the per-CPU backlogs, which reorder a flow
    // sent from two CPUs. This rule matches nothing of the flow and keeps XDP linked
    // throughout, so only where the loss rule sits differs.
    nf.run(&rx.ns, &ANCHOR_RULE)?;
    let until = Until {
        packets: u64::MAX,
        limit: secs,
    };
    for i in 0..reps {
        for side in [Side::SenderEgress, Side::ReceiverIngress] {
            let name = format!("place{i}");
            let opts = Opts {
                cc: Some(cc),
                sndbuf: Some(SNDBUF),
                pacing: Some(PLACEMENT_PACING),
            };
            let r = run_with(nf, tx, rx, side, &name, action, until, opts)
                .with_context(|| format!("{cc}, rule at the {}", side.label()))?;
            let host = if side == Side::SenderEgress { tx } else { rx };
            nf.run(&host.ns, &["rule", "del", &name])?;
            match side {
                Side::SenderEgress => egress.push(r),
                Side::ReceiverIngress => ingress.push(r),
            }
        }
    }
    nf.run(&rx.ns, &["rule", "del", ANCHOR_RULE[2]])?;
    Ok((LossRun::sum(&egress), LossRun::sum(&ingress)))
}

/// What keeps XDP linked on the receiver during [`placements`]: a drop of UDP to the discard
/// port, which the flow never sends.
const ANCHOR_RULE: [&str; 11] = [
    "rule",
    "add",
    "xdp-anchor",
    "--dir",
    "ingress",
    "--proto",
    "udp",
    "--dport",
    "9",
    "--drop",
    "100%",
];

/// `a / b` or `b / a`, whichever is at least 1 (infinite when one is 0 and the other is not).
pub fn spread(a: f64, b: f64) -> f64 {
    if a == b {
        1.0
    } else if a <= 0.0 || b <= 0.0 {
        f64::INFINITY
    } else {
        (a / b).max(b / a)
    }
}

/// How the two placements of [`placements`] compare: goodput and retransmissions per drop
/// within `bound` of each other, and no more DSACKs per drop at the sender's egress than
/// `bound` times those the same loss causes at the receiver's ingress (or 0.02, for a
/// reference with none). Returns the failures, empty when it holds.
pub fn placement_failures(egress: &LossRun, ingress: &LossRun, bound: f64) -> Vec<String> {
    let mut f = Vec::new();
    let g = spread(egress.goodput_bits, ingress.goodput_bits);
    if g > bound {
        f.push(format!(
            "goodput differs {g:.2}x ({:.1} vs {:.1} Mbit/s)",
            egress.goodput_bits / 1e6,
            ingress.goodput_bits / 1e6
        ));
    }
    let r = spread(egress.retrans_per_drop(), ingress.retrans_per_drop());
    if r > bound {
        f.push(format!(
            "retransmissions per drop differ {r:.2}x ({:.2} vs {:.2})",
            egress.retrans_per_drop(),
            ingress.retrans_per_drop()
        ));
    }
    let allowed = (bound * ingress.dsacks_per_drop()).max(0.02);
    if egress.dsacks_per_drop() > allowed {
        f.push(format!(
            "DSACKs per drop at the sender's egress {:.3} > {allowed:.3} (receiver's ingress: {:.3})",
            egress.dsacks_per_drop(),
            ingress.dsacks_per_drop()
        ));
    }
    f
}

/// A TCP flow from `tx` to `rx` (port [`PORT`]) until `done` says so (asked every 500 ms) or
/// `limit` has passed, and what the sender's stack and the receiving device counted meanwhile
/// (the counters are left at zero).
pub fn flow(
    tx: &Host,
    rx: &Host,
    limit: Duration,
    done: impl FnMut() -> Result<bool>,
    counters: impl FnMut() -> Result<Counters>,
) -> Result<LossRun> {
    flow_with(tx, rx, limit, Opts::default(), done, counters)
}

/// The TcpExt counters [`LossRun`] reports besides the segments.
const TCP_EXT: [&str; 3] = ["TCPDSACKRecv", "TCPTimeouts", "TCPSpuriousRtxHostQueues"];

fn tcp_ext(ns: &str) -> Result<[u64; 3]> {
    let mut v = [0; 3];
    for (v, name) in v.iter_mut().zip(TCP_EXT) {
        *v = snmp(ns, "TcpExt", name)?;
    }
    Ok(v)
}

/// [`flow`] with the sender's socket set up as `opts` says.
pub fn flow_with(
    tx: &Host,
    rx: &Host,
    limit: Duration,
    opts: Opts<'_>,
    mut done: impl FnMut() -> Result<bool>,
    mut counters: impl FnMut() -> Result<Counters>,
) -> Result<LossRun> {
    let dst = rx.sock(false, PORT);
    ensure!(
        is_documentation(dst.ip()),
        "{dst} is not a documentation address"
    );
    let out0 = snmp(&tx.ns, "Tcp", "OutSegs")?;
    let re0 = snmp(&tx.ns, "Tcp", "RetransSegs")?;
    let rx0 = link_stats(&rx.ns, &rx.iface)?;
    let tx0 = link_stats(&tx.ns, &tx.iface)?;
    let ext0 = tcp_ext(&tx.ns)?;
    let listener =
        run_in(&rx.ns, || TcpListener::bind(dst))?.with_context(|| format!("listen on {dst}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let hard_stop = Instant::now() + limit + Duration::from_secs(15);
    let sink = {
        let received = received.clone();
        thread::spawn(move || sink(&listener, &received, hard_stop))
    };
    let start = Instant::now();
    let sender = {
        let stop = stop.clone();
        let ns = tx.ns.clone();
        let (cc, sndbuf, pacing) = (opts.cc.map(str::to_owned), opts.sndbuf, opts.pacing);
        thread::spawn(move || send(&ns, dst, cc.as_deref(), (sndbuf, pacing), &stop, hard_stop))
    };
    let end = start + limit;
    let mut polled = Ok(());
    while Instant::now() < end && !sender.is_finished() {
        thread::sleep(
            Duration::from_millis(500).min(end.saturating_duration_since(Instant::now())),
        );
        match done() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                polled = Err(e);
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let sent = sender
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    let got = sink.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
    polled?;
    sent?;
    got?;
    let secs = start.elapsed().as_secs_f64();
    // Every segment of the flow is sent: the sink saw EOF, and the sender the sink's FIN. Its
    // last ACK may still be in flight (counted by the receiving veth, not yet by the rule
    // behind the backlog), and the stack may answer a FIN sent again (its ACK was dropped) from
    // TIME_WAIT. So everything is read until two readings 50 ms apart agree (at most 20 tries):
    // the rule's counters, the sender's and the receiving device's then count the same packets.
    let mut read = || -> Result<(u64, u64, u64, u64, Counters)> {
        let (rx1, tx1) = (
            link_stats(&rx.ns, &rx.iface)?,
            link_stats(&tx.ns, &tx.iface)?,
        );
        Ok((
            snmp(&tx.ns, "Tcp", "OutSegs")? - out0,
            snmp(&tx.ns, "Tcp", "RetransSegs")? - re0,
            rx1.rx_packets - rx0.rx_packets,
            (tx1.tx_dropped - tx0.tx_dropped) + (rx1.rx_dropped - rx0.rx_dropped),
            counters()?,
        ))
    };
    let mut last = read()?;
    for _ in 0..20 {
        thread::sleep(Duration::from_millis(50));
        let now = read()?;
        if now == last {
            break;
        }
        last = now;
    }
    let (out_segs, retrans, rx_packets, device_dropped, counters) = last;
    let ext = tcp_ext(&tx.ns)?;
    Ok(LossRun {
        counters,
        out_segs,
        retrans,
        rx_packets,
        device_dropped,
        goodput_bits: received.load(Ordering::Relaxed) as f64 * 8.0 / secs,
        secs,
        dsacks: ext[0] - ext0[0],
        timeouts: ext[1] - ext0[1],
        host_queued: ext[2] - ext0[2],
    })
}

/// The same flow through `tc qdisc add dev <tx's iface> root netem <args>` on the sender for
/// `secs`: netem's own counters (`tc -s`: packets sent and dropped) stand in for the rule's
/// (matched = sent + dropped, as netem counts them). The qdisc is removed after.
pub fn netem_flow(tx: &Host, rx: &Host, args: &[&str], secs: Duration) -> Result<LossRun> {
    let mut add = vec!["qdisc", "add", "dev", &tx.iface, "root", "netem"];
    add.extend_from_slice(args);
    crate::lab::exec_in(&tx.ns, "tc", &add)?;
    let f = flow(tx, rx, secs, || Ok(false), || Ok(Counters::default()));
    let stats = crate::lab::exec_in(&tx.ns, "tc", &["-s", "qdisc", "show", "dev", &tx.iface]);
    let _ = crate::lab::exec_in(&tx.ns, "tc", &["qdisc", "del", "dev", &tx.iface, "root"]);
    let (f, stats) = (f?, stats?);
    let (sent, dropped) = netem_counts(&stats).with_context(|| format!("parse tc -s: {stats}"))?;
    Ok(LossRun {
        counters: Counters {
            matched: sent + dropped,
            dropped,
            passed: sent,
            ..Counters::default()
        },
        ..f
    })
}

/// "Sent B bytes P pkt (dropped D, ...": (P, D) of the first qdisc listed.
fn netem_counts(tc: &str) -> Option<(u64, u64)> {
    let rest = &tc[tc.find("Sent ")?..];
    let mut w = rest.split_whitespace();
    let pkt = w.nth(3)?.parse().ok()?;
    let d = &rest[rest.find("dropped ")? + 8..];
    let dropped = d[..d.find(',')?].parse().ok()?;
    Some((pkt, dropped))
}

/// setsockopt(2) on `s` with the bytes of `val`.
fn setsockopt(s: &TcpStream, level: i32, opt: i32, val: &[u8], what: &str) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a valid socket and a buffer of the length given.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            opt,
            val.as_ptr().cast(),
            val.len() as libc::socklen_t,
        )
    };
    ensure!(rc == 0, "set {what}: {}", io::Error::last_os_error());
    Ok(())
}

/// Writes until `stop`, then closes (the sink reads to EOF).
fn send(
    ns: &str,
    dst: SocketAddr,
    cc: Option<&str>,
    (sndbuf, pacing): (Option<u32>, Option<u64>),
    stop: &AtomicBool,
    hard_stop: Instant,
) -> Result<()> {
    use std::io::Write as _;
    let mut s = run_in(ns, || {
        TcpStream::connect_timeout(&dst, Duration::from_secs(5))
    })?
    .with_context(|| format!("connect to {dst} from {ns}"))?;
    // Before any data: the whole flow runs under it.
    // (Root may pick any congestion control the kernel has, also one outside
    // net.ipv4.tcp_allowed_congestion_control, which a namespace cannot make its default.)
    if let Some(cc) = cc {
        setsockopt(
            &s,
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            cc.as_bytes(),
            &format!("congestion control {cc}"),
        )?;
    }
    if let Some(b) = sndbuf {
        let v = i32::try_from(b).unwrap_or(i32::MAX);
        setsockopt(
            &s,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &v.to_ne_bytes(),
            "the send buffer",
        )?;
    }
    if let Some(rate) = pacing {
        setsockopt(
            &s,
            libc::SOL_SOCKET,
            libc::SO_MAX_PACING_RATE,
            &rate.to_ne_bytes(),
            "the pacing cap",
        )?;
    }
    s.set_write_timeout(Some(Duration::from_millis(200)))?;
    let chunk = vec![0x5au8; 64 << 10];
    while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
        match s.write(&chunk) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e).context("write to the sink"),
        }
    }
    s.shutdown(std::net::Shutdown::Write)
        .context("close the flow")?;
    // Wait for the sink's FIN: the kernel ACKs it before this read sees EOF, so the flow's last
    // segment has been sent (and counted, by TCP and by any rule) when this returns. Without
    // it that ACK raced the counters read after the flow (off by one, seen under TCG).
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    ensure!(
        read_to_eof(&mut s, &mut [0u8; 512], hard_stop, |_| {})
            .context("wait for the sink to close")?,
        "the sink did not close before the hard stop"
    );
    Ok(())
}

/// Reads `s` to EOF, handing each read's length to `got`, until `hard_stop`: true at EOF, false
/// when the hard stop came first. Read timeouts and interruptions are waited through.
fn read_to_eof(
    s: &mut TcpStream,
    buf: &mut [u8],
    hard_stop: Instant,
    mut got: impl FnMut(usize),
) -> io::Result<bool> {
    use std::io::Read as _;
    while Instant::now() < hard_stop {
        match s.read(buf) {
            Ok(0) => return Ok(true),
            Ok(n) => got(n),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Accepts one connection and reads it to EOF (or the hard stop), counting bytes.
fn sink(listener: &TcpListener, received: &AtomicU64, hard_stop: Instant) -> Result<()> {
    listener.set_nonblocking(true)?;
    let mut s = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ensure!(Instant::now() < hard_stop, "no connection to the sink");
                thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e).context("accept"),
        }
    };
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    let eof = read_to_eof(&mut s, &mut vec![0u8; 256 << 10], hard_stop, |n| {
        received.fetch_add(n as u64, Ordering::Relaxed);
    })
    .context("read on the sink")?;
    ensure!(eof, "the flow did not end before the hard stop");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lossy(dropped: u64, retrans: u64, dsacks: u64, mbit: f64, secs: f64) -> LossRun {
        LossRun {
            counters: Counters {
                matched: dropped * 10,
                dropped,
                passed: dropped * 9,
                ..Counters::default()
            },
            retrans,
            dsacks,
            goodput_bits: mbit * 1e6,
            secs,
            ..LossRun::default()
        }
    }

    #[test]
    fn placements_compare_goodput_retransmits_and_dsacks() {
        let ingress = lossy(1000, 1050, 20, 800.0, 3.0);
        assert!(placement_failures(&lossy(900, 1000, 20, 700.0, 3.0), &ingress, 1.5).is_empty());
        // The reported case: goodput far apart, retransmits per drop 1.5x, DSACKs doubled.
        let f = placement_failures(&lossy(100, 160, 4, 10.0, 3.0), &ingress, 1.5);
        assert_eq!(f.len(), 3, "{f:?}");
        // No DSACKs in the reference: a few per hundred drops are still allowed.
        let clean = lossy(1000, 1000, 0, 5.0, 3.0);
        assert!(placement_failures(&lossy(1000, 1000, 10, 5.0, 3.0), &clean, 1.5).is_empty());
        assert_eq!(
            placement_failures(&lossy(1000, 1000, 30, 5.0, 3.0), &clean, 1.5).len(),
            1
        );
        assert_eq!(spread(0.0, 0.0), 1.0);
        assert!(spread(0.0, 1.0).is_infinite());
    }

    #[test]
    fn sums_weigh_goodput_by_time() {
        let t = LossRun::sum(&[lossy(10, 12, 1, 100.0, 1.0), lossy(30, 30, 0, 20.0, 3.0)]);
        assert_eq!((t.counters.dropped, t.retrans, t.dsacks), (40, 42, 1));
        assert!((t.goodput_bits - 40e6).abs() < 1.0, "{}", t.goodput_bits);
        assert!((t.secs - 4.0).abs() < 1e-9);
    }

    #[test]
    fn netem_counts_parse() {
        let t = "qdisc netem 8001: root refcnt 2 limit 1000 loss 10%\n Sent 1234 bytes 56 pkt (dropped 7, overlimits 0 requeues 0)\n backlog 0b 0p requeues 0\n";
        assert_eq!(super::netem_counts(t), Some((56, 7)));
    }
}
